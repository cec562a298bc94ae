"""The netns lab used by demo, bench and tests: nodes and pods as network namespaces."""
