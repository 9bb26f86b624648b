"""Every trainer in one place: the optax loop and the classifier / VAE trainers
(:mod:`cfjax.training.loop`), the Mirror-CFE decoder + discriminator
(:mod:`cfjax.training.mirror_decoder`), the attribute predictors
(:mod:`cfjax.training.attributes`) and the default models per dataset (:mod:`cfjax.training.zoo`)."""
