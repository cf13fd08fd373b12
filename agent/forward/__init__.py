"""Forwarding: the host's journal, shipped to the collector as stored (DESIGN section 6).

``source`` reads stored lines from a seq onward (the journal is the spool), ``client`` speaks
the protocol of ``agent.collector.protocol`` over mutual TLS, ``forwarder`` runs the loop on a
thread of its own, and ``records`` defines the ``receipt`` and ``forward_error`` records it
hands the main loop to journal.
"""
