"""The model: `CharRNN` (model), its LSTM kernels (lstm), the optimizer and learning-rate
schedule (optimizer), and which device and precision it computes on (devices). Imports from
charrnn's shared modules only."""
