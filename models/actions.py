"""The action types the model knows, in index order. The wire schema (stream_app.records) uses
this same tuple, so a model's action head and the events it reads can never disagree."""

ACTIONS: tuple[str, ...] = ("view", "search", "add_to_cart", "remove_from_cart", "favorite", "purchase")
ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}
