"""Default filesystem locations of sealtrail, in one place.

Every path here can be overridden by a command-line flag (``--journal DIR``, ``--keys DIR``,
``--policies DIR``) so that a user or a test can do a throwaway run; the agent's also by its
configuration file (``agent.config``).
"""

from __future__ import annotations

from pathlib import Path

#: The agent's configuration file (``sealtrail agent --config FILE`` names another).
DEFAULT_AGENT_CONFIG = Path("/etc/sealtrail/agent.toml")
#: Policy files the agent loads.
DEFAULT_POLICIES_DIR = Path("/etc/sealtrail/policies")
#: Host signing keys: ``journal.pub`` (genesis public key) and the live epoch private key.
DEFAULT_KEYS_DIR = Path("/etc/sealtrail/keys")
#: Append-only journal segments (``seg-000001.jsonl``, ...).
DEFAULT_JOURNAL_DIR = Path("/var/lib/sealtrail/journal")
#: Name of the genesis public key file inside the keys directory.
PUBLIC_KEY_NAME = "journal.pub"
#: The running agent's status file (pid, last policy load), read by ``sealtrail policy reload``.
DEFAULT_RUN_DIR = Path("/run/sealtrail")
