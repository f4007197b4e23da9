"""The server-less setup `make demo` runs on: a kombu transport that keeps messages in files
(`ergate://`), and the file watch it and the SQLite store wake on.

May import: modules of this folder; kombu. Nothing else of the package.
"""
