"""Usage statements out of the store: `meter report` (files in table, CSV, JSON and HTML, signed or
not), `meter report verify`, and what the API serves. The statement itself is built in
`meter.core.statement`."""
