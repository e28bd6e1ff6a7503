"""The one typed settings object of chatplane: read once from `CHATPLANE_*` environment
variables (and command-line overrides), then passed down through constructors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["embedded", "cluster"]
LlmBackendName = Literal["auto", "offline", "anthropic", "openai_compatible"]
TraceExporter = Literal["none", "otlp", "file"]


# Phrasings of "let me talk to a person" (docs/handoff.md), for handoff_request_patterns.
DEFAULT_HANDOFF_REQUEST_PATTERNS: tuple[str, ...] = (
    r"\b(talk|speak|chat)\s+(to|with)\s+(a\s+|an\s+|the\s+)?(real\s+|live\s+)?"
    r"(human|person|agent|operator|representative|someone|somebody)\b",
    r"\b(real|live)\s+(human|person|agent|operator)\b",
    r"\b(connect|transfer|put)\s+me\s+(to|with|through\s+to)\s+(a\s+|an\s+)?"
    r"(human|person|agent|operator|representative)\b",
    r"\b(human|operator|representative)\s*,?\s*please\b",
    r"\b(i\s+want|i\s+need|i'd\s+like|get\s+me)\s+(a|an)\s+"
    r"(human|person|operator|representative)\b",
    r"\bmit\s+einem\s+menschen\b",
    r"\bhablar\s+con\s+(una\s+persona|un\s+humano|un\s+agente)\b",
    r"\bparler\s+(à|a)\s+(un\s+humain|une\s+personne|un\s+conseiller)\b",
)


class Settings(BaseSettings):
    """Every knob of every service; each service reads only the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="CHATPLANE_", extra="forbid", frozen=True)

    # Where everything of the embedded profile lives (log, databases, index, dev key).
    data_dir: Path = Path(".chatplane")
    # embedded: embedded log and index, PostgreSQL run by `chatplane up` in data_dir/postgres.
    # cluster: Kafka, PostgreSQL, OpenSearch.
    profile: Profile = "embedded"

    # The system of record (both profiles; `chatplane up` sets the DSN of the embedded
    # profile's server) and the cluster profile's engines (engines.py writes their variables).
    postgres_dsn: str = ""
    postgres_pool_max_size: int = Field(default=10, gt=0)
    kafka_bootstrap: str = ""
    kafka_topic_partitions: int = Field(default=6, gt=0)
    opensearch_url: str = ""
    opensearch_index: str = "chatplane-memory"
    log_level: str = "INFO"

    # Listening: each service binds host:port; port 0 picks a free port.
    host: str = "127.0.0.1"
    gateway_port: int = 50051
    agent_port: int = 50052
    memory_port: int = 50053
    persistence_port: int = 50054
    # Where services reach each other.
    agent_address: str = "127.0.0.1:50052"
    memory_address: str = "127.0.0.1:50053"
    persistence_address: str = "127.0.0.1:50054"

    # Shutdown: how long in-flight calls may take to finish after SIGTERM.
    drain_grace_seconds: float = Field(default=30.0, gt=0)

    # Gateway: input limits, rate limit, deadlines.
    max_message_bytes: int = Field(default=32 * 1024, gt=0)
    max_comment_bytes: int = Field(default=4 * 1024, gt=0)
    rate_limit_per_minute: float = Field(default=60.0, gt=0)
    rate_limit_burst: int = Field(default=20, gt=0)
    api_key_cache_seconds: float = Field(default=5.0, ge=0)
    turn_timeout_seconds: float = Field(default=300.0, gt=0)
    internal_call_timeout_seconds: float = Field(default=5.0, gt=0)

    # Agent: context assembly.
    recent_turns: int = Field(default=8, ge=0)
    # The recent turns come from Persistence; a previous turn whose records are on the log but
    # not stored yet is waited for this long at most (docs/decisions.md, read-your-writes).
    recent_turns_wait_seconds: float = Field(default=2.0, ge=0)
    recall_top_k: int = Field(default=4, ge=0)
    context_token_budget: int = Field(default=3000, gt=0)
    log_append_timeout_seconds: float = Field(default=10.0, gt=0)

    # LLM backend. The offline responder is paced like a real model.
    # auto: anthropic when an Anthropic API key is configured, else offline (docs/llm.md).
    llm_backend: LlmBackendName = "auto"
    offline_tokens_per_second: float = Field(default=40.0, gt=0)
    offline_first_token_seconds: float = Field(default=0.3, ge=0)
    offline_max_tokens: int = Field(default=400, gt=0)
    # Real backends (docs/llm.md). Empty model: the backend's default (anthropic_default_model).
    llm_model: str = ""
    # Fallbacks in order, each "backend:model" (JSON list in the environment).
    llm_fallbacks: list[str] = Field(default_factory=list)
    llm_max_tokens: int = Field(default=1024, gt=0)
    llm_temperature: float | None = Field(default=None, ge=0, le=2)
    llm_stop_sequences: list[str] = Field(default_factory=list)
    # The SDKs' own retries per model, and upstream requests per turn over the whole chain.
    llm_max_retries: int = Field(default=2, ge=0)
    llm_max_attempts_per_turn: int = Field(default=3, gt=0)
    llm_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # No token for this long: the stream is cut (DEADLINE_EXCEEDED, or the next fallback).
    llm_stall_timeout_seconds: float = Field(default=30.0, gt=0)
    # Circuit breaker per provider: consecutive failures that open it, and for how long.
    llm_breaker_failures: int = Field(default=5, gt=0)
    llm_breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    anthropic_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CHATPLANE_ANTHROPIC_API_KEY"),
    )
    anthropic_api_key_file: Path | None = None
    anthropic_base_url: str = Field(
        default="",
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "CHATPLANE_ANTHROPIC_BASE_URL"),
    )
    anthropic_default_model: str = "claude-sonnet-5-5"
    anthropic_prompt_caching: bool = True
    openai_base_url: str = ""
    openai_api_key: SecretStr = SecretStr("")
    openai_api_key_file: Path | None = None

    # Persistence: the log consumer's batches (size or time, whichever first).
    batch_max_records: int = Field(default=500, gt=0)
    batch_max_wait_seconds: float = Field(default=0.05, gt=0)

    # Memory: the indexer's batches from the message log (size or time, whichever first;
    # measured in docs/memory.md).
    memory_index_batch_max_records: int = Field(default=64, gt=0)
    memory_index_batch_max_wait_seconds: float = Field(default=0.2, gt=0)

    # Memory: the embedding model's folder (empty: the installed all-MiniLM-L6-v2 package).
    embedding_model_dir: str = ""
    # fp32 (default) or int8: the encoder's weights quantised to int8 (~1.6-2.2x less CPU per
    # text, vectors at cosine ~0.99 to fp32; docs/rag.md "Embedding precision"). Turns and
    # chunks stored under one precision stay searchable under the other; `chatplane memory
    # rebuild` re-embeds them.
    embedding_precision: Literal["fp32", "int8"] = "fp32"

    # Native mutual TLS outside a mesh (docs/security.md): with all three files set, every
    # service serves TLS and verifies client certificates against the CA, and every internal
    # call presents this certificate. None: plaintext (in Istio the mesh does mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # False only serves TLS to clients without certificates (not recommended).
    tls_require_client_cert: bool = True

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """`CHATPLANE_TLS_CERT=` (empty) means unset, not the current directory."""
        return None if value == "" else value

    # Edge: Envoy in front of the Gateway (`python -m chatplane.edge`, docs/edge.md): native gRPC,
    # gRPC-Web and REST/JSON with Server-Sent Events on one port.
    gateway_address: str = "127.0.0.1:50051"
    edge_host: str = "127.0.0.1"
    edge_port: int = 8080
    # Envoy's admin interface, always on 127.0.0.1; 0 picks a free port.
    edge_admin_port: int = 0
    # Origins (scheme://host[:port], comma-separated) whose pages may call the API cross-origin;
    # empty: only pages served by the edge itself (same origin).
    edge_allowed_origins: str = ""
    # host:port of the web chat's static file server; empty: the edge serves the API only.
    web_address: str = ""
    edge_max_connections: int = Field(default=1024, gt=0)
    # Local rate limit of the whole edge (all clients): requests per second and burst.
    edge_rate_limit_per_second: int = Field(default=200, gt=0)
    edge_rate_limit_burst: int = Field(default=400, gt=0)
    # A stream with no bytes either way for this long is closed (answers are never cut by a
    # total timeout, only by silence).
    edge_stream_idle_timeout_seconds: float = Field(default=120.0, gt=0)
    edge_max_heap_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Proxies in front of the edge that append X-Forwarded-For and are trusted for the client's
    # address (1 behind the Istio ingress gateway).
    edge_xff_trusted_hops: int = Field(default=0, ge=0)
    # Where Envoy writes its JSON access log; empty: <data dir>/logs/edge-access.log.
    edge_access_log: str = ""

    # Web chat (python -m chatplane.webui): the built files of web/ (empty: the checkout's
    # web/dist) on host:webui_port; Envoy sends every non-API path there.
    web_dist_dir: str = ""
    webui_port: int = 50056

    # Observability (docs/observability.md). Prometheus /metrics per process on
    # metrics_host:metrics_port (0: a free port, printed in the ready line; -1: no endpoint).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=-1, le=65535)
    # Tenants that get their own label value on token counters (per process); later ones
    # are counted under "_other", so the series count stays bounded.
    metrics_tenant_limit: int = Field(default=100, ge=0)
    # How often consumer lag is read from the log for the lag gauge.
    metrics_lag_interval_seconds: float = Field(default=5.0, gt=0)
    # Tracing: none (default: no SDK installed, nothing recorded), otlp (OTLP/gRPC to
    # otlp_endpoint, or the standard OTEL_EXPORTER_OTLP_* variables), file (JSON spans, one per
    # line, to <data dir>/traces/<service>.jsonl or trace_file).
    trace_exporter: TraceExporter = "none"
    otlp_endpoint: str = ""
    trace_file: str = ""
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # Token quotas (docs/quotas.md): tokens a turn reserves from its tenant's daily quota
    # before it runs; 0 = an estimate (the question's tokens + llm_max_tokens). Tenants
    # without a quota (`chatplane quota set`) are unlimited.
    quota_reserve_tokens: int = Field(default=0, ge=0)

    # Resume (docs/resume.md): how long the Agent keeps a finished turn's events for
    # ResumeChat (the stored answer serves it after that), and at most how many finished
    # turns it keeps (the oldest go first).
    resume_linger_seconds: float = Field(default=60.0, ge=0)
    resume_max_finished_turns: int = Field(default=256, ge=0)
    # rag: document ingestion limits and chunking (docs/rag.md).
    document_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    document_max_chunks: int = Field(default=2000, gt=0)
    tenant_max_document_chunks: int = Field(default=100_000, gt=0)
    document_chunk_chars: int = Field(default=1000, ge=100)
    document_chunk_overlap_chars: int = Field(default=150, ge=0)
    document_ingest_timeout_seconds: float = Field(default=600.0, gt=0)
    # rag: the model's context window (tokens); the prompt gets it less llm_max_tokens, and
    # at most context_token_budget (docs/rag.md).
    llm_context_window_tokens: int = Field(default=200_000, gt=0)

    # A/B variants (docs/variants.md): a JSON list of variants, or a JSON/YAML file holding
    # one (not both); empty: one variant, "default", with the LLM settings above. The salt of
    # the sticky per-user assignment: a new salt reshuffles every user (a new experiment).
    variants: str = ""
    variants_file: str = ""
    variants_salt: str = "chatplane-variants"

    # Identity (issue 7; docs/security.md "OIDC end-user tokens"). A bearer token that is not
    # an API key (`cp_...`) is verified as a JWT of this OIDC issuer (RS256/ES256 only, keys
    # from oidc_jwks_url). Empty issuer: JWTs are refused.
    oidc_issuer: str = ""
    # The `aud` the tokens must carry (required with an issuer).
    oidc_audience: str = ""
    oidc_jwks_url: str = ""
    # The claim naming the user's tenant; a fixed oidc_tenant instead puts every user of the
    # issuer in one tenant.
    oidc_tenant_claim: str = "tenant"
    oidc_tenant: str = ""
    # The claim holding the user's roles or scopes (a space-separated string or a list; a
    # dotted path reaches nested claims, e.g. realm_access.roles). "scope" falls back to "scp".
    oidc_roles_claim: str = "scope"
    # Claim value -> chatplane role (chat, operator, admin); other values are ignored.
    oidc_role_mapping: dict[str, str] = Field(
        default_factory=lambda: {"chat": "chat", "operator": "operator", "admin": "admin"}
    )
    # The roles of a token whose claim maps to none (empty: such a token may do nothing).
    oidc_default_roles: list[str] = Field(default_factory=lambda: ["chat"])
    # Clock skew allowed on exp/nbf/iat.
    oidc_leeway_seconds: float = Field(default=30.0, ge=0)
    # JWKS: refetched after this long, and at most once per min interval for an unknown kid.
    oidc_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    oidc_jwks_min_refresh_seconds: float = Field(default=10.0, ge=0)
    oidc_jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    # Audit log (docs/security.md "Audit log"): the Gateway appends auth failures in batches
    # of at most audit_batch_max_records every audit_flush_seconds; beyond audit_max_pending
    # queued events further ones are only counted (one audit.dropped record).
    audit_batch_max_records: int = Field(default=500, gt=0, le=1000)
    audit_flush_seconds: float = Field(default=0.2, gt=0)
    audit_max_pending: int = Field(default=10_000, gt=0)

    # Human handoff (docs/handoff.md). A user message matching any of these regular
    # expressions (case-insensitive, searched anywhere) hands the conversation to a human;
    # an empty list turns the rule off. JSON list in CHATPLANE_HANDOFF_REQUEST_PATTERNS.
    handoff_request_patterns: tuple[str, ...] = DEFAULT_HANDOFF_REQUEST_PATTERNS
    # This many thumbs-down ratings in one conversation hand it to a human; 0 turns it off.
    handoff_thumbs_down_threshold: int = Field(default=3, ge=0)

    # PII redaction (docs/privacy.md): tenants whose text is masked (emails, phones, cards,
    # IBANs, national ids) before it goes to the model provider or into the memory index;
    # "*" means every tenant. JSON list in CHATPLANE_PII_REDACTION_TENANTS. National phone
    # numbers are read in pii_phone_region (ISO 3166 alpha-2).
    pii_redaction_tenants: tuple[str, ...] = ()
    pii_phone_region: str = Field(default="US", pattern=r"^[A-Z]{2}$")

    # Feedback datasets (issue 8, docs/datasets.md): tenants that opted in to having their
    # rated conversations exported for retraining or prompt tuning. Default: none (off).
    # JSON list in CHATPLANE_DATASET_EXPORT_TENANTS; no wildcard (consent is per tenant).
    dataset_export_tenants: tuple[str, ...] = ()
    # Variant registry (docs/registry.md): admins of these tenants may push, promote and roll
    # back registry variants (they change answers for every tenant); JSON list in
    # CHATPLANE_REGISTRY_ADMIN_TENANTS. Every Agent polls the deployment this often.
    registry_admin_tenants: tuple[str, ...] = ("dev",)
    registry_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Evaluation cost (docs/eval.md): US dollars per million [input, output] tokens per model;
    # a model not listed costs 0 and is reported as unpriced. JSON in CHATPLANE_MODEL_PRICES.
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "claude-opus-4-1": (15.0, 75.0),
            "claude-sonnet-4-5": (3.0, 15.0),
            "claude-haiku-4-5": (1.0, 5.0),
            "chatplane-offline-1": (0.0, 0.0),
        }
    )
    # Erasure and retention (docs/privacy.md). How often Persistence deletes the conversations
    # of tenants with a retention period (`chatplane retention set`) that passed it.
    retention_sweep_interval_seconds: float = Field(default=3600.0, gt=0)

    # Encryption at rest (docs/security.md "Encryption at rest"): the key-encryption keys that
    # wrap every user's data key, as lines ID:BASE64 (32 bytes; the first line wraps new
    # keys, the others only unwrap, for rotation), in CHATPLANE_KEK or the file
    # CHATPLANE_KEK_FILE; neither set: a development KEK file kek.key in data_dir, created
    # on first use. Unwrapped data keys stay in memory at most data_key_cache_seconds.
    kek: SecretStr = SecretStr("")
    kek_file: Path | None = None
    data_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    def data_path(self, name: str) -> Path:
        """A file or folder inside the data directory (created on demand)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir / name
