"""The Lark grammar of the .mx language (data only)."""
