"""Learning: the ranker, its training, pretraining, fine-tuning, continual cycles, the model store and serving plan."""
