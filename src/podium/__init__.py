"""podium: from a folder of images to a scored, leaderboard-ready submission."""

__version__ = "0.1.0"
