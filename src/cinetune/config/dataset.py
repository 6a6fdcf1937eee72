"""Schema of `multidatabackend.json`: a list of dataset entries, in the quickstarts' key names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CaptionStrategy = Literal["textfile", "filename", "instanceprompt", "jsonl", "csv"]


class VideoOptions(BaseModel):
    """The `video` block of a video dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_frames: int = Field(
        49, ge=1, description="Frames per training sample (adjusted down to the model's frame rule)."
    )
    min_frames: int | None = Field(
        None,
        ge=1,
        description="Clips shorter than this (at the dataset frame rate) are skipped. Default: num_frames.",
    )
    max_frames: int | None = Field(
        None,
        ge=1,
        description="Clips longer than this (at the dataset frame rate) are skipped. Default: no limit.",
    )
    frame_rate: float | None = Field(
        None,
        gt=0,
        description="Frames per second clips are resampled to. Default: the top-level `frame_rate`.",
    )
    bucket_strategy: Literal["aspect_ratio", "resolution_frames"] = Field(
        "aspect_ratio",
        description="aspect_ratio: buckets by shape, every sample num_frames long. "
        "resolution_frames: buckets 'WxH@F', each clip trains on all its frames "
        "(rounded down to the frame rule and frame_interval).",
    )
    frame_interval: int = Field(
        1,
        ge=1,
        description="With resolution_frames: frame counts are 1 + a multiple of lcm(frame rule, this), "
        "so fewer distinct frame buckets form.",
    )
    windows_per_clip: int = Field(
        4,
        ge=1,
        le=64,
        description="Distinct random frame windows (start drawn from the seed) cached per clip, so the start "
        "changes with the epoch: epoch e trains on window e mod N. A clip with fewer possible starts gets "
        "fewer. 1: one window per clip, as other trainers cache.",
    )

    @model_validator(mode="after")
    def _frames_consistent(self) -> VideoOptions:
        if self.min_frames is not None and self.min_frames > self.num_frames:
            raise ValueError(
                f"video.min_frames ({self.min_frames}) is above video.num_frames ({self.num_frames})"
            )
        if self.max_frames is not None and self.max_frames < self.num_frames:
            raise ValueError(
                f"video.max_frames ({self.max_frames}) is below video.num_frames ({self.num_frames})"
            )
        return self


class AudioOptions(BaseModel):
    """The `audio` block of a video dataset: train the clips' sound too (families with audio, e.g.
    ltxvideo2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_split: bool = Field(
        True,
        description="true: each clip's audio comes from its own file (the span under the sampled frames). "
        "false: from the same-named file of the dataset's `s2v_datasets` (audio datasets), which then "
        "must be set.",
    )
    sample_rate: int = Field(16000, gt=0, description="Hz the audio is resampled to (LTX-2: 16000).")
    channels: Literal[1, 2] = Field(
        2,
        description="1: downmix to mono (duplicated into a stereo VAE); 2: keep stereo (mono is duplicated).",
    )
    duration_interval: float | None = Field(
        None,
        gt=0,
        description="Bucket rounding (s) of audio-only datasets. A video dataset's audio always spans "
        "exactly its sampled frames, so here it changes nothing.",
    )
    allow_zero_audio: bool = Field(
        False,
        description="Clips without audio (no track; with s2v_datasets, no same-named audio file): false "
        "skips them (listed in the data report); true trains them with silent audio latents and their "
        "audio loss masked out (weight 0).",
    )


class DatasetConfig(BaseModel):
    """One entry of `multidatabackend.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, description="Unique name of this dataset.")
    type: Literal["local"] = Field(
        "local", description="Where the data lives; only 'local' folders are supported."
    )
    dataset_type: Literal["video", "image", "audio", "text_embeds"] = Field(
        "video",
        description="video and image datasets hold samples; audio datasets hold the sound of a video "
        "dataset's clips (linked by its s2v_datasets); text_embeds says where caption embeddings go.",
    )
    instance_data_dir: Path | None = Field(
        None,
        description="Folder with the clips (and their .txt captions); for an audio dataset, the audio files "
        "(.wav .flac .mp3 .m4a .aac .ogg .opus), named as the clips they belong to.",
    )
    caption_strategy: CaptionStrategy = Field(
        "textfile",
        description="textfile: same-named .txt (one caption per line); filename: the file name; "
        "instanceprompt: `instance_prompt` for all; "
        "jsonl/csv: a metadata file with file_name and caption columns.",
    )
    instance_prompt: str | None = Field(
        None, description="The caption of every clip with caption_strategy instanceprompt."
    )
    metadata_file: Path | None = Field(
        None,
        description="jsonl/csv metadata file. Default: metadata.jsonl / metadata.csv in instance_data_dir.",
    )
    resolution: int = Field(512, ge=16, description="Target size in pixels (see resolution_type).")
    resolution_type: Literal["pixel", "pixel_area"] = Field(
        "pixel_area",
        description="pixel: the short side becomes `resolution`; "
        "pixel_area: the bucket's area is about resolution².",
    )
    repeats: int = Field(0, ge=0, description="Extra passes over this dataset per epoch (0 = seen once).")
    cache_dir: Path | None = Field(
        None, description="text_embeds datasets: where caption embeddings are cached."
    )
    cache_dir_vae: Path | None = Field(
        None, description="video/image datasets: where VAE latents are cached."
    )
    default: bool = Field(False, description="text_embeds: this is the default caption-embedding cache.")
    disabled: bool = Field(False, description="Skip this entry entirely.")
    write_batch_size: int = Field(
        16, ge=1, description="text_embeds: captions encoded per text-encoder call."
    )
    crop: bool = Field(
        True, description="Center-crop to the bucket after resizing the short side (must be true)."
    )
    crop_style: Literal["center"] = Field("center", description="Only center crops are supported.")
    video: VideoOptions | None = Field(
        None, description="Video options (num_frames, min_frames, buckets...)."
    )
    audio: AudioOptions | None = Field(
        None,
        description="Video datasets: also train the clips' audio (families with audio). Without it (and "
        "without s2v_datasets) nothing audio is extracted, cached or trained.",
    )
    s2v_datasets: list[str] | None = Field(
        None,
        description="Video datasets: ids of audio datasets that hold the clips' sound, one file per clip "
        "with the clip's relative path and another extension (clips/a.mp4 <- clips/a.wav); the audio file's "
        "start is the video's first frame. Implies an `audio` block with auto_split false.",
    )

    @field_validator("s2v_datasets", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _implied_blocks(cls, data: Any) -> Any:
        """Blocks other keys imply, filled in before validation (the model is frozen after): a video dataset
        always has a `video` block; s2v_datasets implies an `audio` block with auto_split false."""
        if not isinstance(data, dict) or data.get("disabled"):
            return data
        data = dict(data)
        if data.get("dataset_type", "video") != "video":
            return data
        if data.get("video") is None:
            data["video"] = {}
        if data.get("s2v_datasets"):
            audio = data.get("audio")
            if isinstance(audio, BaseModel):
                audio = audio.model_dump(exclude_unset=True)
            audio = dict(audio or {})
            if audio.get("auto_split") in (True, "true"):
                raise ValueError(
                    f"dataset '{data.get('id')}': audio.auto_split true takes the audio from each clip's "
                    "own file, s2v_datasets from a separate audio dataset: set auto_split false (or remove "
                    "it) to use s2v_datasets, or remove s2v_datasets"
                )
            data["audio"] = {**audio, "auto_split": False}
        return data

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.disabled:
            return self
        self._check_keys_apply()
        if self.dataset_type in ("video", "image", "audio") and self.instance_data_dir is None:
            raise ValueError(
                f"dataset '{self.id}': instance_data_dir is required for a {self.dataset_type} dataset"
            )
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError(
                f"dataset '{self.id}': caption_strategy 'instanceprompt' needs `instance_prompt`"
            )
        if not self.crop:
            raise ValueError(
                f"dataset '{self.id}': crop=false is not supported yet; clips are center-cropped"
            )
        if self.audio is not None and self.dataset_type != "video":
            raise ValueError(f"dataset '{self.id}': an `audio` block needs dataset_type 'video'")
        self._check_audio_source()
        if self.dataset_type == "image" and self.video is not None:
            raise ValueError(f"dataset '{self.id}': an image dataset takes no `video` block")
        return self

    def _check_audio_source(self) -> None:
        """Where a video dataset's audio comes from: its own files (auto_split) or its s2v_datasets."""
        if self.s2v_datasets is not None:
            if self.dataset_type != "video":
                raise ValueError(f"dataset '{self.id}': s2v_datasets needs dataset_type 'video'")
            if not self.s2v_datasets:
                raise ValueError(f"dataset '{self.id}': s2v_datasets is empty; name an audio dataset's id")
        elif self.audio is not None and not self.audio.auto_split:
            raise ValueError(
                f"dataset '{self.id}': audio.auto_split false takes the audio from a separate audio dataset: "
                "set s2v_datasets to its id (a dataset_type 'audio' entry), or set auto_split true to use "
                "each clip's own audio track"
            )

    def _check_keys_apply(self) -> None:
        """Every key a user sets must do something for this kind of dataset: reject those that would not."""
        given = self.model_fields_set
        if self.dataset_type == "text_embeds":
            allowed = {"id", "type", "dataset_type", "default", "disabled", "cache_dir", "write_batch_size"}
            useless = sorted(given - allowed)
        elif self.dataset_type == "audio":
            useless = sorted(given - {"id", "type", "dataset_type", "disabled", "instance_data_dir"})
        else:
            useless = sorted(given & {"cache_dir", "default", "write_batch_size"})
            if "instance_prompt" in given and self.caption_strategy != "instanceprompt":
                useless.append("instance_prompt (only with caption_strategy 'instanceprompt')")
            if "metadata_file" in given and self.caption_strategy not in ("jsonl", "csv"):
                useless.append("metadata_file (only with caption_strategy 'jsonl' or 'csv')")
            video = self.video
            if video is not None and video.bucket_strategy == "aspect_ratio" and video.frame_interval != 1:
                useless.append("video.frame_interval (only with bucket_strategy 'resolution_frames')")
        if useless:
            hint = " (latents go to cache_dir_vae)" if "cache_dir" in useless else ""
            raise ValueError(
                f"dataset '{self.id}': {', '.join(useless)} has no effect on a {self.dataset_type} dataset"
                f"{hint}; remove it"
            )

    @property
    def is_media(self) -> bool:
        return self.dataset_type in ("video", "image")


class DataBackendConfig(BaseModel):
    """The whole `multidatabackend.json` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: list[DatasetConfig]

    @model_validator(mode="after")
    def _check(self) -> DataBackendConfig:
        ids = [d.id for d in self.datasets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"dataset ids must be unique; repeated: {', '.join(dupes)}")
        if not self.media:
            raise ValueError(
                "no enabled video or image dataset: add one with dataset_type 'video' or 'image'"
            )
        self._check_audio_links()
        embeds = [d for d in self.datasets if d.dataset_type == "text_embeds" and not d.disabled]
        if len(embeds) > 1:
            raise ValueError(
                f"only one text_embeds dataset is used, found {len(embeds)} enabled "
                f"({', '.join(d.id for d in embeds)}): disable or remove the others"
            )
        return self

    def _check_audio_links(self) -> None:
        """Every s2v_datasets id names an enabled audio dataset, and every audio dataset is linked."""
        audio = {d.id: d for d in self.datasets if d.dataset_type == "audio" and not d.disabled}
        linked: set[str] = set()
        for ds in self.media:
            for link in ds.s2v_datasets or []:
                target = next((d for d in self.datasets if d.id == link), None)
                if target is None or target.disabled or target.dataset_type != "audio":
                    what = (
                        "no dataset"
                        if target is None
                        else "disabled"
                        if target.disabled
                        else f"a {target.dataset_type} dataset"
                    )
                    raise ValueError(
                        f"dataset '{ds.id}': s2v_datasets names '{link}', which is {what}; it must be an "
                        "enabled dataset with dataset_type 'audio'"
                    )
                linked.add(link)
        linked.update(link for d in self.datasets if d.disabled for link in d.s2v_datasets or [])
        unlinked = sorted(set(audio) - linked)  # (one a disabled video dataset links is just unused)
        if unlinked:
            raise ValueError(
                f"audio dataset(s) {', '.join(unlinked)} not linked by any video dataset: audio-only "
                "training is not supported yet; name it in a video dataset's s2v_datasets, or remove it"
            )

    @property
    def media(self) -> list[DatasetConfig]:
        return [d for d in self.datasets if d.is_media and not d.disabled]

    def audio_datasets(self, ds: DatasetConfig) -> list[DatasetConfig]:
        """The audio datasets `ds` takes its clips' sound from (its s2v_datasets, in order)."""
        by_id = {d.id: d for d in self.datasets}
        return [by_id[link] for link in ds.s2v_datasets or []]

    @property
    def text_embeds(self) -> DatasetConfig | None:
        embeds = [d for d in self.datasets if d.dataset_type == "text_embeds" and not d.disabled]
        defaults = [d for d in embeds if d.default]
        return (defaults or embeds or [None])[0]
