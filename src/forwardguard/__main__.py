from forwardguard.cli import app

app(prog_name="forwardguard")
