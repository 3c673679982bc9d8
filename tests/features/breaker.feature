Feature: The circuit breaker takes a failing replica out of the pool and lets it back in
  A replica that fails task after task is ejected for a while instead of failing more tasks:
  its breaker opens. When the open period is over, one trial task may go to it (half-open);
  a success closes the breaker, a failure opens it again for twice as long. Time here is the
  scenario's clock, which moves only when the scenario says so or when everything waits.

  Background:
    Given a pool "chat" of the replicas "gpu-0" and "gpu-1"
    And each replica makes one attempt per task
    And a breaker opens after 2 consecutive failures, for 60 seconds at first

  Scenario: Closed, open, half-open, closed again
    Given the server of "gpu-0" answers its next 2 tasks with 503
    When tasks are submitted one after another until "gpu-0" has failed 2 of them
    Then every one of those tasks ended "stop"
    And the breaker of "gpu-0" is open
    When 4 more tasks are submitted one after another
    Then "gpu-1" served all 4 of them
    When 60 seconds pass
    Then the breaker of "gpu-0" is half-open
    When tasks are submitted one after another until one is served by "gpu-0"
    Then the breaker of "gpu-0" is closed

  Scenario: A failed trial opens the breaker again for twice as long
    Given the server of "gpu-0" answers its next 3 tasks with 503
    When tasks are submitted one after another until "gpu-0" has failed 2 of them
    And 60 seconds pass
    And tasks are submitted one after another until "gpu-0" has failed 3 of them
    Then the breaker of "gpu-0" is open
    When 60 seconds pass
    Then the breaker of "gpu-0" is open
    When 60 seconds pass
    Then the breaker of "gpu-0" is half-open
