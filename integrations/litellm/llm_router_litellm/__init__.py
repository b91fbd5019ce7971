"""LiteLLM integration of llm-router-plugin: budget-aware routing inside ``litellm.Router`` and the LiteLLM proxy.

- Python SDK: ``RoutingStrategy.install(litellm_router, settings)``.
- Proxy: ``litellm_settings.callbacks: ["llm_router_litellm.proxy.router_callback"]`` in config.yaml, router settings
  under ``callback_settings.llm_router`` and per-deployment budgets under ``model_info.llm_router``.

Both run over one :class:`LiteLLMAdapter`; see :mod:`llm_router_litellm.adapter` for how deployments map to the
router.
"""

from llm_router_litellm.adapter import LiteLLMAdapter, decision_headers, deployment_config
from llm_router_litellm.proxy import ProxyCallback
from llm_router_litellm.strategy import OutcomeLogger, RoutingStrategy

__version__ = "0.1.0"

__all__ = [
    "LiteLLMAdapter",
    "OutcomeLogger",
    "ProxyCallback",
    "RoutingStrategy",
    "__version__",
    "decision_headers",
    "deployment_config",
]
