import langchain_llm_router

EXPECTED_ALL = ["RouteInfo", "RoutingChatModel", "__version__", "route_info"]


def test_public_api_is_frozen() -> None:
    assert sorted(langchain_llm_router.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert hasattr(langchain_llm_router, name), name


def test_testing_module_offers_the_fake_chat_model() -> None:
    from langchain_core.language_models import BaseChatModel
    from langchain_llm_router.testing import WordCountChatModel

    assert issubclass(WordCountChatModel, BaseChatModel)
