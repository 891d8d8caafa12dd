"""One settings object, from environment variables (DIHS_*) or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIHS_", extra="forbid", frozen=True)

    bundle: str = Field("bundles/default", description="bundle folder to serve")
    model_name: str = Field(
        "dihs", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="name in responses and /v2/models/{name}"
    )
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 to listen on all interfaces)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    ingress: str = Field(
        "haproxy",
        pattern=r"^(haproxy|proxy)$",
        description="what takes the HTTP port: haproxy "
        "(Ray Serve's HAProxy mode: HAProxy forwards each request straight to a model replica's own "
        "HTTP server) or proxy (Ray Serve's Python proxy actor, one Ray call per request)",
    )
    replicas: int = Field(1, ge=1, description="model replicas (fixed; use the Serve config for autoscaling)")
    slo_ms: float = Field(
        250.0, gt=0, description="latency objective: load pressure rises as latency nears it"
    )
    max_accuracy_loss: float = Field(
        0.005,
        ge=0,
        le=1,
        description="auto mode serves a plan only while the one-sided "
        "95% upper bound on its accuracy loss against the full model (calibration split "
        "and live shadow agreement, pooled) is within this; past the cheapest served "
        "plan's capacity the replica answers 503 (1: every plan, no bound)",
    )
    shadow_share: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="share of a replica's idle time (auto on the full "
        "model at zero load pressure) that shadow passes of the candidate plans may take, "
        "counting their agreement with the full model's answers (0: no shadow passes)",
    )
    agreement_file: str | None = Field(
        None,
        description="where a replica keeps its plans' live agreement counts "
        "across restarts (default: live-agreement.json in the bundle's folder)",
    )
    upgrade_bundle: str | None = Field(
        None,
        description="a bundle folder `dihs train --out` has not written yet: once it "
        "appears each replica swaps it in live for `bundle` (make run serves the early "
        "bundle of `--early-out` this way while width training goes on)",
    )
    max_batch_size: int = Field(16, ge=1, le=256, description="texts per model batch")
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long a batch waits to fill; 0: a batch starts as soon "
        "as the replica is free, with the texts that arrived while the last one ran",
    )
    max_ongoing_requests: int = Field(
        128,
        ge=1,
        description="texts a model replica holds in its batch queue and "
        "running (the autoscaling signal counts these)",
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="texts a replica holds beyond max_ongoing_requests; "
        "a request that would go past both is refused at once: 503 with Retry-After",
    )
    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(20000, ge=1, description="characters per text")
    torch_threads: int = Field(1, ge=1, description="torch threads per model replica")
    replica_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs Ray reserves for each model replica (Ray schedules "
        "replicas by it; keep it = torch_threads so replicas do not share cores)",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (a GPU if there is one), cpu or cuda[:N]",
    )
    dtype: str = Field(
        "auto",
        pattern=r"^(auto|float32|bfloat16|int8)$",
        description="number format of the model: auto (a GPU: bfloat16; a CPU: the fastest, timed "
        "at start-up, of float32, int8 and bfloat16 where the CPU runs it in hardware, among those "
        "whose answers agree with float32's on the calibration split within "
        "max_dtype_disagreement; a bundle may pin one), float32, bfloat16, or int8 (CPU: every width "
        "level's weights quantized per output channel at start-up)",
    )
    max_dtype_disagreement: float = Field(
        0.01,
        ge=0,
        le=1,
        description="dtype auto serves int8 or bfloat16 only where the one-sided 95% upper bound on "
        "the share of calibration texts that some plan answers differently from float32 is within "
        "this (0 disagreements in 512 texts: 0.58%; 1: 0.92%)",
    )
    gc_freeze: bool = Field(
        True,
        description="after start-up, move the objects then alive (the model, the libraries: "
        "about half a million) out of the garbage collector's scans, so a full collection under "
        "load no longer stalls the replica for about 0.26 s (measured on a 2-core CPU)",
    )
    drain_timeout_s: float = Field(
        30.0,
        gt=0,
        description="on SIGTERM or a replica's shutdown: how long accepted "
        "requests may take to finish while new ones get 503 with Retry-After",
    )
    metrics_port: int = Field(
        8080, ge=1, le=65535, description="Ray's Prometheus metrics export port (local runs)"
    )
    api_key: SecretStr | None = Field(
        None,
        description="if set, inference and explain routes need "
        "`Authorization: Bearer <key>`; health, metadata and metrics stay open",
    )
    api_key_file: str | None = Field(None, description="read the API key from this file instead (first line)")

    @model_validator(mode="after")
    def _read_key_file(self):
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            # an empty key would turn authentication on and let `Authorization: Bearer ` in
            raise ValueError("api_key is empty: unset DIHS_API_KEY for no authentication, or set a key")
        if self.api_key_file and self.api_key is None:
            path = Path(self.api_key_file)
            if not path.is_file():
                raise ValueError(f"api_key_file {path} does not exist")
            key = path.read_text().strip().splitlines()
            if not key or not key[0].strip():
                raise ValueError(f"api_key_file {path} is empty")
            object.__setattr__(self, "api_key", SecretStr(key[0].strip()))
        return self

    def shareable(self) -> dict:
        """Settings to hand to Serve replicas: the key itself never travels in a deployment config
        (replicas read DIHS_API_KEY or api_key_file themselves)."""
        return self.model_dump(exclude={"api_key"})

    @property
    def replica_capacity(self) -> int:
        """Texts a replica admits (waiting + running) before it refuses requests."""
        return self.max_ongoing_requests + self.max_queued_requests

    @property
    def serve_limit(self) -> int:
        """Serve's own request limits (max_ongoing_requests and max_queued_requests of the
        deployment): far above what a replica admits, so that the replica, not Serve's proxy,
        decides back-pressure and answers it in the API's error shape."""
        return max(1024, 4 * self.replica_capacity)
