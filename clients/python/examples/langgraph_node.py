"""A LangGraph node that gives the model the user's current biometrics.

Run against `make run` (LangGraph is optional: without it the node runs on
its own, which is all this example needs to show):

    PYTHONPATH=clients/python /usr/bin/python3 clients/python/examples/langgraph_node.py demo-user

The node calls biometrics_summary() (one gRPC GetLatest), puts the compact
text into the state for the model, and logs only a redacted copy of the
state. The whole graph run shares one trace id and request id with the
bridge (trace_context), so its spans and logs join the agent's.
"""

import logging
import os
import sys
from typing import List, TypedDict

from biobridge import BiobridgeError, Client, Unavailable, biometrics_summary, redact, trace_context

log = logging.getLogger("agent")

# One client per process: it holds a gRPC channel (thread-safe, reused).
CLIENT = Client(
    os.environ.get("BIOBRIDGE_GRPC_ADDR", "127.0.0.1:9103"),
    os.environ.get("BIOBRIDGE_SERVICE_TOKEN", "dev-agent-token"),
)
# The services' LOG_PSEUDONYM_KEY, so agent and bridge logs name users alike.
PSEUDONYM_KEY = os.environ.get("LOG_PSEUDONYM_KEY", "dev-pseudonym-key-not-for-production")


class State(TypedDict, total=False):
    user_id: str
    messages: List[dict]
    biometrics: str


def biometrics_node(state: State) -> State:
    """LangGraph node: adds a one-line biometrics summary to the state."""
    try:
        # Every metric the user has; name metrics (e.g. ["hrv_rmssd_ms",
        # "resting_heart_rate_bpm"]) to get "no data: ..." for missing ones.
        summary = biometrics_summary(CLIENT, state["user_id"], max_age=48 * 3600)  # older than 2 days: no data
    except Unavailable:
        summary = "biometrics temporarily unavailable"
    except BiobridgeError as e:  # e.g. Unauthenticated: a deployment problem, not the user's
        log.error("biometrics lookup failed: %s", e.code)
        summary = "biometrics unavailable"
    new_state: State = {
        "biometrics": summary,
        "messages": state.get("messages", []) + [{"role": "tool", "name": "biometrics", "content": summary}],
    }
    # Never log raw agent state: user ids and values are PHI.
    log.info("state after biometrics: %s", redact({**state, **new_state}, PSEUDONYM_KEY))
    return new_state


def build_graph():
    """The graph, when LangGraph is installed (pip install langgraph)."""
    from langgraph.graph import END, START, StateGraph  # type: ignore

    g = StateGraph(State)
    g.add_node("biometrics", biometrics_node)
    g.add_edge(START, "biometrics")
    g.add_edge("biometrics", END)
    return g.compile()


def main(user_id: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    state: State = {"user_id": user_id, "messages": [{"role": "user", "content": "How recovered am I?"}]}
    # Pass the incoming request's traceparent / x-request-id here when the
    # graph runs for an HTTP request; without them a new trace starts.
    with trace_context() as tc:
        log.info("run request_id=%s", tc.request_id)
        try:
            result = build_graph().invoke(state)
        except ImportError:
            result = {**state, **biometrics_node(state)}
    print(result["biometrics"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-user")
