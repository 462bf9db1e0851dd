from retention.cli import run

run()
