"""Line-search-driven and second-order methods as chainable transformations."""
