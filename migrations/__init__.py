"""Alembic environment and versions; shipped inside the package so `ggnet` can upgrade a database."""
