"""Server settings, from environment variables prefixed `GENSERVE_` (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime import Device


class Limits(BaseSettings):
    """What one request may ask for; the API's bounds come from here and from the model card."""

    model_config = SettingsConfigDict(env_prefix="GENSERVE_", frozen=True, extra="ignore")

    max_images: int = Field(64, ge=1, description="Most images one request may ask for.")
    max_steps: int = Field(1000, ge=1, description="Most sampling steps (also capped by the model's T).")
    max_guidance: float = Field(20.0, ge=1.0, description="Largest classifier-free guidance scale.")
    max_cost: int = Field(
        64 * 1000, ge=1, description="Cap on images x steps x rows per image (2 when guided) for one diffusion request."
    )
    max_input_images: int = Field(64, ge=1, description="Most images one request may send (scoring, encoding).")
    max_iwae_samples: int = Field(1024, ge=1, description="Largest k, the importance samples per image and label.")
    max_frames: int = Field(64, ge=2, description="Most frames one interpolation may ask for.")


class Settings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="GENSERVE_", extra="ignore")

    model_dir: Path = Field(Path("exported"), description="Folder of model folders, each with a model.json.")
    device: Device = Field("auto", description="auto: CUDA where a GPU is present, else CPU.")
    ort_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per replica.")
    max_batch: int = Field(64, ge=1, description="Most network rows per call.")
    max_queued_images: int = Field(1024, ge=1, description="Images a replica holds before refusing with 503.")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline of a request from its arrival.")
