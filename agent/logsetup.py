"""Where the command line's logging goes: the journal under systemd, stderr otherwise.

systemd says stderr is its journal stream by setting ``$JOURNAL_STREAM`` to that stream's
``st_dev:st_ino`` (systemd.exec(5)); a child whose stderr was redirected inherits the variable,
so it is compared with stderr itself. Into the journal, records go through
``systemd.journal.JournalHandler``: the message alone (journald keeps the priority and the
logger), and each upper-case key of a log call's ``extra=`` as a field of its own, so that
``journalctl -u sealtrail-agent SEALTRAIL_RULE=x`` finds them. The fields sealtrail sets:

- ``SEALTRAIL_EVENT``: the journal record the line is about (``verdict``, ``policy_loaded``,
  ``policy_rejected``, ``policy_mismatch``, ``loss``)
- ``SEALTRAIL_POLICY``: the policy set's digest (``sha256:...``)
- ``SEALTRAIL_RULE``, ``SEALTRAIL_ACTION``: a verdict's rule id and action
- ``SEALTRAIL_SEQ``: that record's seq in sealtrail's own journal
"""

from __future__ import annotations

import logging
import os

STDERR_FORMAT = "sealtrail: %(levelname)s: %(name)s: %(message)s"
SYSLOG_IDENTIFIER = "sealtrail"


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:  # no stderr at all
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: int) -> None:
    """The root logger at ``level``, to the journal or stderr (module doc)."""
    handler: logging.Handler
    if stderr_is_journal():  # systemd-python only here: where systemd runs this process
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
