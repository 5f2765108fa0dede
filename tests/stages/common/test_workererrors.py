"""A Ctrl-C while a loader starts or stops its workers is raised once they have, never lost."""
import pytest

from support.interrupting import run_interrupted

INTERRUPTED = """
items = raised(Loader(sys.argv[1]))
try:
    next(items)
    items.close()
except KeyboardInterrupt:
    EVENTS.append("interrupted")
"""


@pytest.mark.parametrize("when, events", [("start", "started interrupted stopped"),
                                          ("stop", "started stopped interrupted")])
def test_ctrl_c_while_the_loader_starts_or_stops_is_raised_after_it(when, events):
    """Raised inside torch's __del__ it was printed as ignored and lost (`dcpipe run` trained
    on); inside its __init__ it left a half-built iterator whose __del__ printed a traceback."""
    assert run_interrupted(INTERRUPTED, when) == events
