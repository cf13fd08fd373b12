"""A C2SP tlog-witness (``sealtrail witness``): it cosigns a log's checkpoints once it has checked
them consistent with every checkpoint of that log it cosigned before (docs/witness.md)."""
