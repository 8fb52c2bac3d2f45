"""The services layer: the arrows of the loop over the store (DESIGN.md, "The loop the product
serves"), called the same way by the pages, the CLI, the worker's jobs and the tests.

projects (store, project, schema) · users · extraction (features of new samples) · training
(stage 1 / stage 2, predict, evaluate, promote) · ensembles · rounds (plan and open a review round)
· decisions (accept / correct / reject, undo, bulk, the automatic rule) · transcripts · demo,
demo_copy · jobs (the huey worker) · auth · label_check · simulate · table1.
"""
