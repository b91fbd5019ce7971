"""Budget-aware per-query LLM routing.

Embed a query, estimate every deployment's quality and cost from the nearest past queries in Chroma, and send it
to the deployment with the most quality for the budget it has: learned dual weights (one per budget) after a
warm-up, per-deployment budgets enforced with reservations settled by the actual usage.
"""

from llm_router_plugin.budget import BudgetLedger, Reservation, Settlement, SQLiteLedger
from llm_router_plugin.config import DeploymentConfig, EstimatorConfig, RouterConfig
from llm_router_plugin.dataset import DataFile, ImportReport, bundled_path, import_history, read_data
from llm_router_plugin.embedding import (
    Embedder,
    HashingEmbedder,
    OnnxInt8Embedder,
    SentenceTransformerEmbedder,
    estimate_tokens,
    extract_text,
    make_embedder,
)
from llm_router_plugin.errors import (
    BudgetExhaustedError,
    EmptyQueryError,
    HistoryFormatError,
    LedgerCorruptError,
    LedgerUnavailableError,
    RouterError,
    UnknownDecisionError,
)
from llm_router_plugin.estimator import Estimates, KnnEstimator
from llm_router_plugin.history import ChromaHistory, HistoryRecord, ModelOutcome
from llm_router_plugin.metrics import RouterMetrics
from llm_router_plugin.onboarding import OnboardReport, onboard
from llm_router_plugin.profiles import ProfilePrompt, ProfileSet, build_profile_set, default_profile_set
from llm_router_plugin.router import Candidate, Decision, DeploymentStatus, Router, RouterStatus

__version__ = "0.1.0"

__all__ = [
    "BudgetExhaustedError",
    "BudgetLedger",
    "Candidate",
    "ChromaHistory",
    "DataFile",
    "Decision",
    "DeploymentConfig",
    "DeploymentStatus",
    "Embedder",
    "EmptyQueryError",
    "Estimates",
    "EstimatorConfig",
    "HashingEmbedder",
    "HistoryFormatError",
    "HistoryRecord",
    "ImportReport",
    "KnnEstimator",
    "LedgerCorruptError",
    "LedgerUnavailableError",
    "ModelOutcome",
    "OnboardReport",
    "OnnxInt8Embedder",
    "ProfilePrompt",
    "ProfileSet",
    "Reservation",
    "Router",
    "RouterConfig",
    "RouterError",
    "RouterMetrics",
    "RouterStatus",
    "SQLiteLedger",
    "SentenceTransformerEmbedder",
    "Settlement",
    "UnknownDecisionError",
    "__version__",
    "build_profile_set",
    "bundled_path",
    "default_profile_set",
    "estimate_tokens",
    "extract_text",
    "import_history",
    "make_embedder",
    "onboard",
    "read_data",
]
