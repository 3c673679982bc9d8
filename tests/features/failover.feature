Feature: Failover before the first token, never after
  A task whose replica fails before the stream has started is placed again on another replica
  of the pool; the consumer sees a single stream. Once Started has been delivered the task is
  committed to its replica: what the consumer has read cannot be taken back, so a failure
  after it is the task's end, never a second replica's text appended.

  Background:
    Given a pool "chat" of the replicas "gpu-0", "gpu-1" and "gpu-2"
    And each replica makes one attempt per task
    And the host fails a task over at most 2 times

  Scenario Outline: The first replica fails before any event; another one serves the task
    Given the first replica that task "t-1" meets <fault>
    When task "t-1" is submitted and read to its end
    Then task "t-1" is served by a replica other than the first one it met
    And task "t-1" streams one Started, with attempt 2, its tokens in order, Metrics and End "stop"
    And the pool has counted 1 failover

    Examples:
      | fault                                       |
      | answers 503                                 |
      | resets the connection before the headers    |
      | resets the connection after the headers     |

  Scenario: Two replicas fail the task; the third one serves it
    Given the first 2 replicas that task "t-1" meets answer 503
    When task "t-1" is submitted and read to its end
    Then task "t-1" is served by the one replica that had not failed it
    And task "t-1" streams one Started, with attempt 3, its tokens in order, Metrics and End "stop"
    And the pool has counted 2 failovers

  Scenario: When every replica fails before the first token, the task ends with the last error
    Given the first 3 replicas that task "t-1" meets answer 503
    When task "t-1" is submitted and read to its end
    Then task "t-1" ends with only End, error "POOL_UNAVAILABLE", retryable
    And every server received task "t-1" once

  Scenario: A reset after the first tokens ends the task; no other replica is tried
    Given the first replica that task "t-1" meets resets the connection after 3 tokens
    When task "t-1" is submitted and read to its end
    Then task "t-1" streams Started, 3 tokens, Metrics and End error "WORKER_RESET"
    And only one server received task "t-1"
    And the pool has counted 0 failovers
