"""The text and its ids: where a corpus comes from (charrnn.text.corpus, download), its
vocabulary (vocab), its ids cached on disk (idcache) and the batches a run trains on (data,
traindata). Imports from charrnn's shared modules only."""
