"""weights: batch scoring, uid weights, set/commit weights with retries."""
