"""What the journal proves, mapped to the audit-log controls auditors ask about.

Each row says what the control asks, what sealtrail does for it (and so what this report's
journal proves), and what it does not do: claims are only of what the product does
(docs/journal-format.md, docs/collector.md, docs/report.md).
"""

from __future__ import annotations

from typing import NamedTuple


class Attribute(NamedTuple):
    name: str
    proven_by: str


#: The five things an audit trail must establish, and the record fields that establish them.
ATTRIBUTES = (
    Attribute(
        "integrity protection",
        "every record's SHA-256 hash chains to the one before; "
        "Ed25519-signed seals over the Merkle root of all records before them, within "
        "100 ms; signing keys rotated every epoch (default 1 h) with the old private key "
        "erased (forward security); verified here from the genesis public key",
    ),
    Attribute(
        "time",
        "`ts` of every record (the host's realtime clock, ns) and `ts_ns` of "
        "every event (the kernel's boot-time clock converted to wall time); each seal "
        "signs its own time. The clock is the host's: sealtrail does not synchronise "
        "it (NTP/PTP is the host's job)",
    ),
    Attribute(
        "who",
        "`uid`, `pid`, `exe` (and `comm`, `ppid`) of the acting task in every "
        "event and verdict; the audit login uid `auid` and session `ses` (who logged in, "
        "through sudo or su) where the agent records them; the `host` "
        "and `boot_id` in every record. User names are not recorded: a uid is resolved "
        "against the host's accounts by whoever reads it",
    ),
    Attribute(
        "what",
        "the event kind and its object: executed binary and argv, file path "
        "and open flags, peer or local address and port; policy loads with the digest "
        "of the whole policy set",
    ),
    Attribute(
        "outcome",
        "verdict records: `allow`, `audit`, `deny`, `kill` (or `would_deny`/"
        "`would_kill` in monitor mode), the rule id, the policy digest and the mechanism "
        "that enforced it; file and network events carry the syscall's result (>= 0, or -errno)",
    ),
)


class Control(NamedTuple):
    control: str
    asks: str
    provides: str
    not_covered: str


CONTROLS = (
    Control(
        "PCI DSS v4.0 10.2",
        "Audit logs are enabled and record user activity, actions by administrators, invalid "
        "access attempts, changes to identification, start and stop of the audit logs, creation "
        "and deletion of system-level objects; each entry with user, type, time, outcome, "
        "origin and the affected resource (10.2.1-10.2.2).",
        "Process executions, exits, network connections, binds, listens and accepts by default; "
        "file opens, truncates, unlinks, renames, chmod and chown where a policy rule targets "
        "them; every policy decision with its outcome; the agent's own start and stop "
        "(`start`, `stop`, `recovery` after an unclean stop). Each with uid, pid, binary, time, "
        "object and host.",
        "Logins and authentication (PAM, sshd) are not recorded; file activity only on paths "
        "policies name; the uid, not a user name; access to the journal files themselves is not "
        "recorded unless a rule targets them.",
    ),
    Control(
        "PCI DSS v4.0 10.3",
        "Audit logs are protected from destruction and unauthorized modification, promptly "
        "backed up to a central server, and changes to them are detected (10.3.1-10.3.4).",
        "Any change, removal, insertion or reordering of a record is detected by verification "
        "(this report lists each record that fails it); segments are append-only "
        "(FS_APPEND_FL) and sealed ones immutable where the filesystem supports it; with "
        "`--forward` every record is shipped to a collector that verifies it on arrival and "
        "signs receipts.",
        "Detection, not prevention: root on the host can delete the journal (a verify against "
        "the enrolled key, or the collector, then shows it); within the current key epoch root "
        "can rewrite and reseal records (docs/journal-format.md, 10); read access is the "
        "filesystem's (the journal is not encrypted).",
    ),
    Control(
        "PCI DSS v4.0 10.4",
        "Audit logs are reviewed, at least daily for security events, and exceptions and "
        "anomalies are followed up (10.4.1-10.4.3).",
        "This report and `sealtrail journal query` (filters by time, type, action, rule, "
        "policy, pid, binary, path) are the tools for that review; denials and would-be "
        "denials are also logged to the system journal as they happen.",
        "sealtrail does not review anything itself or track follow-up: the review is the "
        "operator's.",
    ),
    Control(
        "PCI DSS v4.0 10.5",
        "Audit log history is retained for at least 12 months, three months immediately "
        "available (10.5.1).",
        "The journal keeps every segment until someone deletes it; a collector keeps every "
        "record it accepted. This report states the period its verified records cover.",
        "sealtrail enforces no retention period and does not archive: retention is the "
        "operator's (and the collector store's backups).",
    ),
    Control(
        "NIST SP 800-53 AU-9",
        "Protect audit information and tools from unauthorized access, modification and "
        "deletion; AU-9(2) store on a separate system; AU-9(3) cryptographic protection.",
        "AU-9(3): SHA-256 hash chain, RFC 6962 Merkle tree, Ed25519 signatures, forward-secure "
        "key rotation; AU-9(2) with `--forward` to a collector on another machine that verifies "
        "and stores every record and answers with signed receipts.",
        "Access control on the journal is the filesystem's; modification is detected, not "
        "prevented (see 10.3).",
    ),
    Control(
        "NIST SP 800-53 AU-10",
        "Provide irrefutable evidence that an individual (or a process acting for one) "
        "performed an action (non-repudiation).",
        "The host signs what it recorded: a record that verifies here was written by the agent "
        "holding that epoch's key, unchanged since; each event names the acting task's uid, "
        "pid and binary.",
        "The signature is the host's, not the individual's: it binds an action to a uid on a "
        "host, and a shared or stolen account is not told apart. Root on the host within the "
        "current epoch can forge records of that epoch.",
    ),
    Control(
        "SOC 2 (2017 TSC) CC7.2",
        "The entity monitors system components for anomalies indicative of malicious acts, "
        "natural disasters and errors, and analyses them to determine whether they are "
        "security events.",
        "Process, file and network activity is monitored in the kernel against the operator's "
        "policies; matches are denied, killed or recorded in real time; loss of monitoring is "
        "itself evidence (`loss` records, enforcement gaps, unclean stops, all in this report).",
        "Detection is by the rules the policies state, not by behavioural analysis; whether a "
        "recorded event is a security incident is for the operator to decide.",
    ),
)
