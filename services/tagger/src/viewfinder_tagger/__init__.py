"""viewfinder tagger service: Labels images with a vision-language model against the user's tag definitions and emits FileTagged."""
