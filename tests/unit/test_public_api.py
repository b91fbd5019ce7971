import llm_router_plugin

EXPECTED_ALL = [
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
    "EstimatorConfig",
    "Estimates",
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


def test_public_api_is_frozen() -> None:
    assert sorted(llm_router_plugin.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert hasattr(llm_router_plugin, name), name


def test_core_imports_no_framework() -> None:
    import subprocess
    import sys

    # A fresh interpreter: in this one the integrations' tests have already imported their frameworks.
    check = (
        "import sys, llm_router_plugin.cli; "  # the widest import of the core
        "print(sorted(m for m in sys.modules if m == 'litellm' or m.startswith(('litellm.', 'langchain'))))"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
