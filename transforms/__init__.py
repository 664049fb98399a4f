"""Pipeline stages, model handlers, pure image functions and the records they exchange."""
