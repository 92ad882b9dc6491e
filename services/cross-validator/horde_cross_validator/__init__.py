"""cross-validator: prompt series generation, sampling, trusted answers, S3."""
