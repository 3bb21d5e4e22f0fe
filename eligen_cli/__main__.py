"""`python -m eligen`: the same command line as `eligen`."""

from eligen.main import app

app(prog_name="eligen")
