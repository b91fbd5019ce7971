"""A small multi-turn chatbot over ``RoutingChatModel``: every turn goes to the deployment the router picks.

Three deployments of RouterBench models share the work, each with its own USD budget; the router learns what each
is good at from the RouterBench sample shipped with the core package. After every turn the bot prints which
deployment answered, why, and the budget each deployment has left; at the end it reports a thumbs-up.

The chat models here are offline stand-ins (``WordCountChatModel``: it echoes the question and counts usage in
words). For real answers, map the same deployment names to real chat models, e.g. ``ChatOpenAI(model="gpt-4o")``
or ``ChatLiteLLM(model="...")``; nothing else changes.

Run (offline, no arguments needed)::

    python examples/langchain_chatbot.py                 # a scripted conversation
    python examples/langchain_chatbot.py --interactive   # type your own turns (empty line to stop)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Offline and silent, before chromadb, onnxruntime or the hub client are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_llm_router import RoutingChatModel, route_info
from langchain_llm_router.testing import WordCountChatModel

from llm_router_plugin import BudgetExhaustedError, Router, bundled_path

# Deployment name → RouterBench model profile, daily USD budget and list prices (USD per million tokens).
DEPLOYMENTS = [
    {"name": "gpt-4", "model": "gpt-4-1106-preview", "usd_budget": 0.2, "window": "1d",
     "input_usd_per_mtok": 10.0, "output_usd_per_mtok": 30.0},
    {"name": "mixtral", "model": "mistralai/mixtral-8x7b-chat", "usd_budget": 0.01, "window": "1d",
     "input_usd_per_mtok": 0.6, "output_usd_per_mtok": 0.6},
    {"name": "wizardlm", "model": "WizardLM/WizardLM-13B-V1.2", "usd_budget": 0.002, "window": "1d",
     "input_usd_per_mtok": 0.3, "output_usd_per_mtok": 0.3, "fallback": True},
]

SCRIPT = [
    "Hi! Which is heavier, a kilogram of feathers or a kilogram of steel?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Now make it iterative and add a docstring and type hints.",
    "A farmer has 17 sheep and all but 9 run away. How many are left?",
    "Pick the best answer: where would you keep a frozen pizza? A) oven B) freezer C) mailbox",
    "Thanks! Write a unit test for the Fibonacci function.",
]

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "You are a concise, helpful assistant."),
    MessagesPlaceholder("history"),
    ("human", "{question}"),
])


def build_router(data_dir: Path) -> Router:
    """A router over the three deployments, its history imported from the shipped RouterBench sample."""
    router = Router.from_config({
        "data_dir": str(data_dir),
        # The hashing embedder keeps the demo fast; omit this key for the bundled MiniLM model in production.
        "embedding_model": "hashing-256",
        # A short warm-up and a small expected volume, so that a six-turn demo shows both routing phases.
        "warmup_queries": 4,
        "expected_queries": 10,
        "deployments": DEPLOYMENTS,
    })
    if router.history.count() == 0:
        print("importing the RouterBench sample into the router's history ...", flush=True)
        router.import_history(bundled_path())  # prompt texts are kept only if the config's store_prompts says so
    return router


def chat_models() -> dict[str, WordCountChatModel]:
    """Offline stand-ins for the three deployments."""
    names = [str(d["name"]) for d in DEPLOYMENTS]
    return {name: WordCountChatModel(model_name=name, reply="[{model}] You asked: {input}") for name in names}


def budget_line(router: Router) -> str:
    """The USD budget each deployment has left today."""
    parts = [f"{d.name} ${d.remaining.get('usd', 0.0):.6f}" + (" (fallback)" if d.fallback else "")
             for d in router.status().deployments]
    return "budget left: " + " | ".join(parts)


def turns(interactive: bool) -> Iterator[str]:
    """The user's turns: typed ones, or the script."""
    if not interactive:
        yield from SCRIPT
        return
    while question := input("you> ").strip():
        yield question


def chat(router: Router, interactive: bool) -> None:
    """Run the conversation, one routed call per turn."""
    model = RoutingChatModel(router=router, models=chat_models())
    chain = PROMPT | model
    history: list[BaseMessage] = []
    last_decision = None
    for question in turns(interactive):
        if not interactive:
            print(f"you> {question}")
        try:
            reply = chain.invoke({"history": history, "question": question})
        except BudgetExhaustedError as exc:
            print(f"  no deployment can afford this turn: {exc}")
            break
        info = route_info(reply)
        assert info is not None  # every reply of the routing model carries its decision
        print(f"{info['deployment']} ({info['phase']})> {reply.text}")
        print(f"  why: {info['reason']}")
        print(f"  {budget_line(router)}")
        history += [HumanMessage(question), AIMessage(reply.text)]
        last_decision = info["decision_id"]
    if last_decision is not None:
        model.feedback(last_decision, 1.0)  # the user liked the last answer: the router learns from it
        print("thumbs-up recorded for the last answer")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and chat."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--interactive", action="store_true", help="type your own turns")
    parser.add_argument("--data-dir", type=Path, help="keep the router's history and budgets here (default: temp)")
    args = parser.parse_args(argv)
    if args.data_dir is not None:
        chat(build_router(args.data_dir), args.interactive)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        chat(build_router(Path(tmp)), args.interactive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
