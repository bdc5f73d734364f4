"""Floor 2: what every role stands on — Ray start-up (runtime), custom resource names (resources),
named phase timers (timing), FAISS indexes (index). Imports only moon_ray.config from the project."""
