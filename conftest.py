"""Root conftest: pytest_plugins may only be declared here."""

pytest_plugins = ["pytester", "hardware.markers", "reports.plugin", "bench.plugin"]
