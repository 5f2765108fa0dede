"""What `dcpipe eval` leaves in a round directory."""

RECORD = "eval.json"
