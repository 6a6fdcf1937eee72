"""One schema for files, CLI and web UI."""

from cinetune.config.dataset import AudioOptions, DataBackendConfig, DatasetConfig, VideoOptions
from cinetune.config.load import LoadedConfig, load_config, parse_overrides
from cinetune.config.train import TrainConfig, parse_resolutions
from cinetune.config.tread import TreadConfig, TreadRoute

__all__ = [
    "AudioOptions",
    "DataBackendConfig",
    "DatasetConfig",
    "LoadedConfig",
    "TrainConfig",
    "TreadConfig",
    "TreadRoute",
    "VideoOptions",
    "load_config",
    "parse_overrides",
    "parse_resolutions",
]
