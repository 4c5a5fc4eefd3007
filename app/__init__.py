"""The Streamlit feature browser (reads the workspace; never writes but labels)."""
