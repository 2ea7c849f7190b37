"""The running application: Faust app factory, agents, metrics and the `streamrec` CLI."""
