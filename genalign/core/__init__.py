"""The training core: named parts (trained networks with their optimisers), phases (which parts step, how often,
and what each needs first), the narrow view that losses see, seeding and checkpoints."""
