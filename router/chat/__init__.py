"""OpenAI-vocabulary pieces shared by the HTTP ingresses: tool-call formats, JSON schemas, usage."""
