"""The step loop and the offline API."""
