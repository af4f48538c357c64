"""The search strategies by name, as lazy "module:Class" targets: the options list them without
importing the engine (and torch) into pytest's plugin loading."""

STRATEGIES: dict[str, str] = {"fast": "harness.fast_search:Fast", "exhaustive": "harness.search:Exhaustive"}
