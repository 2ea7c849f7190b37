"""The Faust worker: the app factory (`app`), its agents and tasks (`agents`, `catalogue`) over one
`WorkerContext` (`context`), the decisions they make (`handlers`), what happens at the edges
(`edges`) and after a failure (`retry`), the HTTP API (`api`, `views`), metrics, model hot swaps
(`model_updates`) and the Faust/aiokafka fixes (`batching`, `tables`, `transport`)."""
