"""The ground floor: model state and masks, history, planning, scores, layers, criteria,
evaluation, data and checks. Nothing here imports from the floors above (see docs/ARCHITECTURE.md)."""
