"""Synthetic job generators: hashcat (docs/miner-protocol.md §3.13) and LLM prompts
(docs/miner-protocol.md §3.14; docs/synthetic-batch.md, "LLM jobs").

Pure modules: no I/O and no clock (the caller passes `now`). Building a hashcat job is CPU-heavy
(~1 ms); build many off the event loop.
"""

from .base import (
    CLASS_ALWAYS_ON_GPU_24GB,
    CLASS_ALWAYS_ON_LLM_A6000,
    CLASS_SPIN_UP_4MIN_GPU_24GB,
    PRESET_NONE,
    PRESET_NVIDIA_ALL,
    Entropy,
    JobGenerator,
    OutputUpload,
    Verdict,
    Volume,
)
from .factory import is_llm_class, make_generator
from .hashcat import (
    ALGORITHMS,
    LOCALNET_PARAMS,
    PRODUCTION_PARAMS,
    SHA256,
    SHA384,
    SHA512,
    HashAlgorithm,
    HashcatFlavour,
    HashcatJobGenerator,
    HashParams,
    answer_for,
    fernet_key,
    flavour_for,
    hash_params,
    hashcat_score,
)
from .hashcat_script import V1_SCRIPT, V2_SCRIPT
from .llm import LLM_IMAGE, LLM_TIMEOUT_SECONDS, LlmPromptSample, LlmPromptsJobGenerator, NoPromptsAvailable

__all__ = [
    "ALGORITHMS",
    "CLASS_ALWAYS_ON_GPU_24GB",
    "CLASS_ALWAYS_ON_LLM_A6000",
    "CLASS_SPIN_UP_4MIN_GPU_24GB",
    "LLM_IMAGE",
    "LLM_TIMEOUT_SECONDS",
    "LOCALNET_PARAMS",
    "PRESET_NONE",
    "PRESET_NVIDIA_ALL",
    "PRODUCTION_PARAMS",
    "SHA256",
    "SHA384",
    "SHA512",
    "V1_SCRIPT",
    "V2_SCRIPT",
    "Entropy",
    "HashAlgorithm",
    "HashParams",
    "HashcatFlavour",
    "HashcatJobGenerator",
    "JobGenerator",
    "LlmPromptSample",
    "LlmPromptsJobGenerator",
    "NoPromptsAvailable",
    "OutputUpload",
    "Verdict",
    "Volume",
    "answer_for",
    "fernet_key",
    "flavour_for",
    "hash_params",
    "hashcat_score",
    "is_llm_class",
    "make_generator",
]
