pytest_plugins = ["shared.testing", "shared.testing.watchdog", "pytester"]
