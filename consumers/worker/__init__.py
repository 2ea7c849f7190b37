"""The Faust worker: app factory, agents, handlers, HTTP views, metrics, model updates, transport fixes."""
