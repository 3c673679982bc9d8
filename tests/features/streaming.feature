Feature: Streaming through a pool of replicas
  An orchestrator submits a task to a pool, not to a server. The host places each task on one
  replica of the pool; the consumer reads one stream per task, with the grammar of a lone
  adapter's stream, and Started says which replica serves it.

  Background:
    Given a pool "chat" of the replicas "gpu-0", "gpu-1" and "gpu-2"

  Scenario: Tasks submitted together each stream in order from the replica that serves them
    Given every server streams its tokens slowly
    When 6 tasks are submitted together and each is read to its end
    Then every task streams Started, its tokens in order, Metrics and End "stop"
    And each task's Started names the replica whose server received the task
    And the load is spread: each replica serves 2 of the tasks

  Scenario: A cancel reaches the replica serving the task
    Given every server streams 2 tokens and then waits
    When task "t-1" is submitted
    And task "t-1" has received 2 tokens
    And the orchestrator cancels task "t-1"
    Then the cancel is accepted
    And the next event of task "t-1" after its tokens is End "cancelled"
    And the server of the replica serving task "t-1" sees its client go away
    And no other server received task "t-1"
