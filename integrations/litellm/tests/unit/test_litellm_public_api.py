import llm_router_litellm

EXPECTED_ALL = [
    "LiteLLMAdapter",
    "OutcomeLogger",
    "ProxyCallback",
    "RoutingStrategy",
    "__version__",
    "decision_headers",
    "deployment_config",
]


def test_public_api_is_frozen() -> None:
    assert sorted(llm_router_litellm.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert hasattr(llm_router_litellm, name), name


def test_config_yaml_names_a_callback_instance_of_the_installed_package() -> None:
    from llm_router_litellm.proxy import router_callback

    assert isinstance(router_callback, llm_router_litellm.ProxyCallback)
